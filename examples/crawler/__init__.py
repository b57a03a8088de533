"""A polite distributed web crawler on cmlray workers (issue 6).

Run ``python examples/crawler/crawl.py --help``; see README.md in this folder.
"""

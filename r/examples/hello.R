library("cmlray")
workers <- launch.workers(n=2, cpu=0.2, memory=0.5, code="print('Hello from a CML Worker')")

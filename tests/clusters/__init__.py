"""Test clusters: hosts of namespaces, autoscaling clusters of local processes."""

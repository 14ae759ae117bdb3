"""mesa: a cluster manager in the style of Apache Mesos, built on libproc."""

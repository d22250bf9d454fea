"""Running the node's processes on one machine: Orthanc, Redis and a worker."""

"""The laptop's commands (upload, status, runs, pull, start, stop, ssh, ...): they read and write
the bucket and GCE, never import TensorFlow, and share only workload.storage and the documents'
models (workload.documents) with the job."""

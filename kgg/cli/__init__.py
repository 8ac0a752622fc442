"""The laptop's commands (upload, status, runs, pull, start, stop, ssh, ...): they read and write
the bucket and GCE, never import TensorFlow, and share only kgg.common.storage and the documents'
models (kgg.common.documents) with the job."""

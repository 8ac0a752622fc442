"""The GCE startup script (Jinja templates + a pure renderer) and the small helpers it runs on the
VM (`python -m startup idle-check`, `python -m startup wait-for-data`)."""

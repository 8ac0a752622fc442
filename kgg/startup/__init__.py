"""The VM side: the startup script (a Jinja template, its pure renderer and the stdlib helper it
carries, bootstrap.py) and the VM agent it hands over to (`kgg.agent`)."""

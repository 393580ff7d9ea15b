"""Route handlers, one module per resource; request and response types live beside their routes."""

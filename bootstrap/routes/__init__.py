"""The bootstrap's HTTP routes, one module per resource; ``http_app.create_app`` mounts them."""

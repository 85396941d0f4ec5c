"""The portal's views, one module per page or action."""

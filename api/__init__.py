"""The versioned JSON API (/api/v1/) for devices and web users."""

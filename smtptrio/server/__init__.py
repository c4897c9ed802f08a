"""The trio adapter: the only package that awaits anything."""

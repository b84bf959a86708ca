"""UI helpers shared by the pages: session state, cached resources, charts and image grids."""

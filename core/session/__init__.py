"""What one server holds for its users: the workspace folder and its database (``store``),
workbenches and their versions (``workbench``), the per-server registry, the job runner,
the shared read-only base models, export bundles and the allowed data roots (``paths``)."""

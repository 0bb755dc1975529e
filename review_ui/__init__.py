"""The review page: ``autolabel ui`` (FastAPI app, background jobs, static page)."""

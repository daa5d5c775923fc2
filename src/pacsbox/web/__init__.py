"""HTTP access to the archive (SPEC E, R3): the FastAPI app, authentication, the REST API."""

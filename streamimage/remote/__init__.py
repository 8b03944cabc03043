"""The distribution-API client: what a push needs of a registry (credentials, auth,
requests); it knows nothing of layers or images.
"""

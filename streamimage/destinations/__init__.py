"""Destinations: where an image goes, one module each, as go-containerregistry has
``tarball``, ``layout`` and ``remote``: ``dockerarchive`` (the reference's docker-archive),
``ociarchive`` (one tar that is an OCI layout and a docker-archive), ``ocidir`` (an OCI
image layout directory); ``tarball`` frames the tar ones, ``layout`` holds the OCI ones'
documents, ``output`` opens stdout or the file ``-o`` names. Each asks the image's layers
for what it needs, and knows nothing of how they are made.
"""

"""A client of the OCI distribution API (go-containerregistry's ``remote``, ``transport``
and ``authn``): ``reference`` parses ``docker://`` image references, ``client`` speaks to a
registry (blobs asked for, mounted, uploaded; manifests put), ``authn`` finds credentials
where the ecosystem keeps them and ``transport`` answers the registry's challenges. It
knows no layer and no image: the registry destination (destinations/registry.py) tells it
what to send.
"""

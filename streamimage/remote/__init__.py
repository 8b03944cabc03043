"""A client of the OCI distribution API (go-containerregistry's ``remote`` and
``transport``): ``reference`` parses ``docker://`` image references, ``client`` speaks to a
registry (blobs asked for, mounted, uploaded; manifests put). It knows no layer and no
image: the registry destination (destinations/registry.py) tells it what to send.
"""

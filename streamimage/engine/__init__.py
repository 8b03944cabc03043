"""The engine: store paths -> framed, hashed, spooled layer tars, and the async pipeline
that streams chunks to a sink. Knows no image format and no Layer (layers/ wraps it).

    walk -> framing -> spool, compress -> hashing -> scheduler (hash passes, ahead)
    workers (forked children)        pipeline (sinks, producer/consumer streams)
"""

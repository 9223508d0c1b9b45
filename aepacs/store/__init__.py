"""Where sealed objects live: the blob store and the query index."""

"""Challenge data: the shard format, variant manifest, download and verification."""

"""Fetchers: one per kind of origin, all behind the Fetcher protocol (base.py).

local.py copies a local file, http.py downloads one URL (one request loop with retries),
engine.py moves response bodies into the part file over several connections, hub.py asks
the Hugging Face hub what to expect before downloading, tier.py is the shared S3 tier.
Nothing is imported here: a cache hit must not load the network stack.
"""

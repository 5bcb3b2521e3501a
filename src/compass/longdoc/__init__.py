"""Internalized reasoning over long visual documents (docs/method.md B): synthetic PDFs, per-page evidence,
top-K evidence traces, <cot> placement and the SFT examples built from them."""

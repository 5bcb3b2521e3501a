"""Internalized reasoning over long visual documents (METHOD.md B): synthetic PDFs, per-page evidence,
top-K evidence traces, <cot> placement and the SFT examples built from them."""

"""vlpipe: pretrain."""

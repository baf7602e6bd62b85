"""Using trained things: params-only restore, Tokenizer and Generator loaders, bundles, batch jobs over them."""

"""train stage of bertforge: corpus, tokenizer, data pipeline and the pretraining loop."""

"""Small real run configs shared by the engine and analysis tests (built on conftest's stores)."""


def tiny_raw(prose_store, code_store, tokenizer, **train) -> dict:
    """Two stages: generic (prose) pre-training, then code fine-tuning with replay and a fresh optimizer."""
    return {
        "name": "tiny-test",
        "seed": 3,
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64},
        "data": {
            "tokenizer": tokenizer,
            "seq_len": 32,
            "domains": {
                "generic": {"source": str(prose_store.path)},
                "code": {"source": str(code_store.path), "budget": 8, "epochs": 1.0},
            },
        },
        "stages": [
            {"name": "pretrain", "steps": 8, "mixture": {"generic": 1.0}, "lr": {"schedule": "cosine", "peak": 3e-3}},
            {
                "name": "finetune",
                "steps": 4,
                "mixture": {"code": 0.5, "generic": 0.5},
                "optimizer": "reset",
                "lr": {"schedule": "cosine", "peak": 1e-3},
            },
        ],
        "train": {
            "total_steps": 12,
            "batch_size": 4,
            "micro_batch_size": 2,
            "precision": "fp32",
            "compile": "off",
            "threads": 1,
            "log_every": 1,
            "progress": "off",
            **train,
        },
        "eval": {"max_sequences": 8, "batch_size": 8},
        "logging": {"tensorboard": False},
    }

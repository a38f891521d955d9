"""Trainer integrations and adapters: fedgrpc inside trainers users already run.

By job, each behind its own optional extra and imported only by name (this
package's `__init__` imports none of them, so `import fedgrpc` works without
transformers, lightning or peft installed):

    hf          `FedGrpcCallback` for a Hugging Face `transformers.Trainer`
                (`pip install 'fedgrpc[hf]'`)
    lightning   `FedGrpcCallback` for a `lightning.pytorch.Trainer`
                (`pip install 'fedgrpc[lightning]'`)
    peft        LoRA / PEFT adapters: save the federated adapter in PEFT's
                format (`pip install 'fedgrpc[lora]'`)
    session     what both callbacks share: one `DiLoCoClient`, fed one
                `step()` per optimizer step with that step's loss and samples
"""

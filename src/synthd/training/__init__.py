"""Fine-tuning: data validation, SFT/DPO runners on TRL + PEFT LoRA, and the job scheduler."""

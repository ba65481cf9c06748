"""DeepSpeed training components shared by lxmert_fast/train.py (pretraining) and
lxmert_fast/finetune.py: environment (env), arguments (args), ds_config validation (ds_config),
engine construction (engine), LR schedule (schedule), resumable distributed sampler (sampler),
checkpointer (checkpoint), metrics logger (metrics), the training loop (loop), pretraining glue
and evaluation (pretrain, evaluate), and the export / plot commands.

Nothing heavy is imported here: `env.setup_environment()` must run before deepspeed is imported.
"""

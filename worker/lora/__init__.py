"""Per-request LoRA stacks, batched across jobs over one shared base-weight forward.

weights: read an adapter file (diffusers/PEFT or kohya) into per-module low-rank pairs;
batched: add each job's stack to its own rows of a shared forward (`RowLoras.rows`);
store: adapters loaded in the background, kept by recency within a byte budget.
"""

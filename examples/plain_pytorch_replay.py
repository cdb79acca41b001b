"""Replay fine-tuning in a plain PyTorch loop: a DataLoader over a ReplayMixture.

    python examples/plain_pytorch_replay.py                        # tiny random Llama on stdlib text, CPU
    torchrun --nproc_per_node 2 examples/plain_pytorch_replay.py   # DDP: each process trains its rows

The lines that matter:

    mix = ReplayMixture(target_texts, replay_texts, tokenizer=model_dir, replay_fraction=0.5, budget=128,
                        epochs=2, seq_len=128, batch_size=8)      # rows="rank": this process's rows
    for i, batch in enumerate(DataLoader(mix, batch_size=micro)):  # micro divides batch_size / processes
        (model(**batch).loss / accumulation).backward()
        if (i + 1) % accumulation == 0: optimizer.step(); optimizer.zero_grad()

Under torchrun each process gets its contiguous rows of every global batch (rank and world size from
torch.distributed), so the processes together train on exactly the single-process batches. To resume,
save `mix.state_dict()` with the model and optimizer and call `mix.load_state_dict(saved)` before iterating.
"""

from __future__ import annotations

import os

from _common import default_workdir, run_from_command_line, summarize, tiny_world


def main(
    *,
    workdir: str | None = None,
    replay_fraction: float = 0.5,
    budget: int = 128,
    epochs: float = 2.0,
    seq_len: int = 128,
    batch_size: int = 8,
    micro_batch_size: int = 2,
    max_steps: int | None = None,
    lr: float = 1e-3,
    seed: int = 0,
) -> dict:
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader
    from transformers import AutoModelForCausalLM

    from replaylab import ReplayMixture

    if "RANK" in os.environ and not dist.is_initialized():  # launched by torchrun
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    processes, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_initialized() else (1, 0)
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu")
    workdir = workdir or default_workdir()
    world = tiny_world(workdir)
    mix = ReplayMixture(
        world["target"],
        world["replay"],
        tokenizer=world["model"],
        replay_fraction=replay_fraction,
        budget=budget,
        epochs=epochs,
        seq_len=seq_len,
        batch_size=batch_size,
        max_steps=max_steps,
        seed=seed,
    )
    accumulation = batch_size // processes // micro_batch_size  # micro-batches per optimizer step, per process
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(world["model"]).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / mix.num_steps)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if dist.is_initialized() else model

    losses, step, running = [], 0, 0.0
    for i, batch in enumerate(DataLoader(mix, batch_size=micro_batch_size)):
        batch = {k: v.to(device) for k, v in batch.items()}  # input_ids = labels: (micro, seq_len + 1)
        loss = ddp(**batch).loss / accumulation  # the model shifts the labels: seq_len targets per row
        loss.backward()
        running += loss.item()
        if (i + 1) % accumulation == 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(running)
            step, running = step + 1, 0.0
    if rank == 0:
        # What a checkpoint needs to continue the identical stream: the mixture's position, with the weights.
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "data": mix.state_dict()},
            os.path.join(workdir, "plain_checkpoint.pt"),
        )
        print(f"{mix}\nloss (rank 0's rows) {losses[0]:.3f} -> {losses[-1]:.3f}")
    out = {**summarize(mix, step, verbose=rank == 0), "losses": losses}
    if dist.is_initialized():
        dist.destroy_process_group()
    return out


if __name__ == "__main__":
    run_from_command_line(main, __doc__)

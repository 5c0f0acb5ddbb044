"""Example 04: a 2-layer GPT-2 trained with the Hugging Face Trainer, recorded by GradscopeCallback.

Byte-level language modelling on gradscope's own documentation: no download, no tokenizer.
"""

import argparse
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import gradscope
from gradscope.integrations.transformers import GradscopeCallback

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 256  # one token per byte of UTF-8


class TextBlocks(torch.utils.data.Dataset):
    """Consecutive blocks of the bytes of some text; the model shifts the labels itself."""

    def __init__(self, text: str, block: int):
        data = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
        n = len(data) // block
        self.blocks = data[: n * block].view(n, block)  # [blocks, block]

    def __len__(self):
        return len(self.blocks)

    def __getitem__(self, i):
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}


def get_args_parser() -> argparse.ArgumentParser:
    """The example's few knobs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=8, help="blocks per micro-batch")
    parser.add_argument("--accumulate", type=int, default=2, help="micro-batches per step")
    parser.add_argument("--block", type=int, default=64, help="bytes per block")
    parser.add_argument("--every", type=int, default=1, help="record every N-th step")
    parser.add_argument("--out", default="runs/examples/hf_gpt2.h5", help="run file")
    return parser


def main(args) -> None:
    """Train with the callback, then read the run back."""
    torch.manual_seed(0)
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in docs if p.is_file())
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=args.block,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=0,  # NUL, which the text does not hold
        eos_token_id=0,
    )
    training = TrainingArguments(
        output_dir=str(Path(args.out).parent / "hf_trainer"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.accumulate,
        learning_rate=3e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=GPT2LMHeadModel(config),
        args=training,
        train_dataset=TextBlocks(text, args.block),
        callbacks=[GradscopeCallback(args.out, every=args.every, overwrite=True)],
    )
    trainer.train()

    run = gradscope.open_run(args.out)
    grad = run.stat("grad_norm")[-1]
    loss = run.metrics["loss"].dropna()
    print(f"recorded {len(run.steps)} steps x {len(run.layers)} layers x {len(run.stats)} stats")
    print(
        f"grad_norm at step {run.steps[-1]}: first layer {grad[0]:.3g}, last layer {grad[-1]:.3g}"
    )
    first, last = loss.index[0], loss.index[-1]
    print(f"loss {loss[first]:.3f} at step {first} -> {loss[last]:.3f} at step {last}")
    # each micro-batch of a step is a small batch of the gradient noise scale (McCandlish et al.)
    noise = run.noise_scale()["model"]
    print(
        f"gradient noise scale (model, mean of the last {min(len(noise), 20)} records): "
        f"{noise.iloc[-1]:.3g} sequences of {args.block} bytes; the batch is "
        f"{args.batch_size * args.accumulate}"
    )
    print(f"run file: {Path(args.out).resolve()} (from {run.attrs['framework']})")
    print(f"look at it: gradscope inspect {args.out}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())

"""The LLC with chains spread over every process of an ``accelerate launch``.

    accelerate launch --config_file examples/accelerate_configs/multi_gpu_bf16.yaml \\
        examples/accelerate_llc.py
    ACCELERATE_USE_CPU=1 accelerate launch --config_file \\
        examples/accelerate_configs/cpu_two_processes.yaml examples/accelerate_llc.py

Each process builds the same model and data, runs chains c ≡ rank (mod processes) on its own
device, and receives every chain's result; the estimate is identical to a one-process run.
The model and data are never ``accelerator.prepare()``-d: DDP would average the gradients of
independent chains, and a sharded loader would hide part of the data from every chain.
"""

from __future__ import annotations

from accelerate import Accelerator

from hf_llc import SamplerConfig, estimate_llc, make_dln_problem


def main() -> None:
    accelerator = Accelerator()  # mixed precision comes from the launch config
    model, dataset, lam = make_dln_problem([20, 10, 20], rank=3, construction="aligned")
    result = estimate_llc(
        model,
        dataset,
        SamplerConfig(num_chains=8),
        accelerator=accelerator,  # chain c runs on process c mod num_processes
        progress=accelerator.is_main_process,
    )
    if accelerator.is_main_process:
        print(result.summary(), f"(theory {float(lam)})")
        print(
            f"processes: {result.diagnostics['num_processes']}, "
            f"mixed precision: {result.diagnostics['mixed_precision']}"
        )
        result.save("llc_accelerate.json")


if __name__ == "__main__":
    main()

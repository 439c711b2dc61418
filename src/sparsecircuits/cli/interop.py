"""`sparsecircuits` subcommands. The authors' release: import-openai, import-openai-circuit, export-openai."""

from __future__ import annotations

import argparse

from .args import force_argument, TASK_LOSS, prune_default


def cmd_import_openai(args: argparse.Namespace) -> None:
    from ..interop.openai import import_openai

    out = import_openai(args.model_dir, args.out, args.tokenizer, args.data, args.force, offline=args.offline)
    data = f"its data: {args.data}" if args.data else "give prune and eval --data DATA_DIR prepared with its tokenizer"
    print(f"wrote {out}: a run directory every command accepts ({data})")


def cmd_import_openai_circuit(args: argparse.Namespace) -> None:
    from ..circuits.circuit import Circuit
    from ..interop.openai import import_openai_circuit

    out = import_openai_circuit(args.viz_data, args.run, args.task, args.out, args.target_loss, args.data, args.force)
    m = Circuit.load(out).metrics
    print(f"{args.task}: {m['n_nodes']} nodes, {m['n_edges']} weight edges; task loss: full model {m['loss_full_model']:.4f},"
          f" circuit {m['loss_circuit']:.4f}, circuit ablated {m['loss_circuit_ablated']:.4f}; wrote {out}/circuit.json"
          " (check it with `sparsecircuits validate`)")


def cmd_export_openai(args: argparse.Namespace) -> None:
    from ..interop.openai import export_openai

    out = export_openai(args.run_dir, args.out, args.allow_eps_change, args.force)
    print(f"wrote {out}: beeg_config.json and final_model.pt (load with circuit_sparsity's load_model), tokenizer.json")


def register_import_openai(sub) -> None:
    p = sub.add_parser("import-openai", help="a model released by the paper's authors as a run directory",
                       description="Reads MODEL_DIR/beeg_config.json and final_model.pt (weights only, never arbitrary"
                                   " pickled objects), or downloads a released model by name, and writes a run"
                                   " directory every other command accepts.")
    p.add_argument("model_dir", metavar="MODEL_DIR_OR_NAME",
                   help="a folder with the released files, or a released model's name (csp_yolo1, csp_sweep1_...):"
                        " downloaded with its tokenizer from the authors' public store into ~/.cache/sparsecircuits"
                        " (SPARSECIRCUITS_CACHE), resuming a partial download; each file's sha256 goes into run.json")
    p.add_argument("--out", required=True, metavar="RUN_DIR")
    p.add_argument("--offline", action="store_true", help="with a name: use the cache only, never the network")
    p.add_argument("--tokenizer", metavar="DIR_OR_FILE",
                   help="the model's tokenizer: a folder with vocab.bpe + encoder.json (e.g. tinypython_2k), or a"
                        " tokenizer.json (default: look in MODEL_DIR, or the released tokenizer with a name)")
    p.add_argument("--data", metavar="DATA_DIR", help="prepared data tokenised with this tokenizer, for mean ablation")
    force_argument(p, "RUN_DIR", "import-openai")
    p.set_defaults(func=cmd_import_openai)


def register_import_openai_circuit(sub) -> None:
    p = sub.add_parser("import-openai-circuit", help="a circuit published by the paper's authors (viz_data.pt) as a circuit directory",
                       description="Nodes from its circuit_data, edges recomputed from the imported run's weights,"
                                   " metrics measured on --task; then validate and view work on it.")
    p.add_argument("viz_data", metavar="VIZ_DATA")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="the run `import-openai` made from the same model")
    p.add_argument("--task", required=True, metavar="NAME_OR_FILE", help="the task to measure it on (built-in or JSONL)")
    p.add_argument("--out", required=True, metavar="CIRCUIT_DIR")
    p.add_argument("--target-loss", type=TASK_LOSS, default=prune_default("target_loss"), help="the loss its sufficiency is judged by (default %(default)s)")
    p.add_argument("--data", metavar="DATA_DIR", help="text for the node means (default: the run's own data)")
    force_argument(p, "CIRCUIT_DIR", "import-openai-circuit")
    p.set_defaults(func=cmd_import_openai_circuit)


def register_export_openai(sub) -> None:
    p = sub.add_parser("export-openai", help="a run directory in the authors' released format",
                       description="Writes MODEL_DIR/beeg_config.json and final_model.pt for circuit_sparsity's"
                                   " load_model; refuses what their model cannot compute the same way.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="MODEL_DIR")
    p.add_argument("--allow-eps-change", action="store_true",
                   help="export a model whose norm epsilon differs from theirs (their logits differ; see docs/cli.md)")
    force_argument(p, "MODEL_DIR", "export-openai")
    p.set_defaults(func=cmd_export_openai)


# each top-level command and the function that adds it to the parser
COMMANDS = {"import-openai": register_import_openai, "import-openai-circuit": register_import_openai_circuit, "export-openai": register_export_openai}

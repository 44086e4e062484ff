"""The loop's stages, as plain functions over a `Workspace` (no Prefect here), one module each in
the order of the loop; the flows in `flows/` wire them, and a notebook or a test can call them:

    workspace  what every stage works in
    ingest     poll -> snapshot (aside) -> validate -> version
    pool       the image pool, the pretrained backbone, "Label next" before the first model
    train      train -> register
    publish    predict + rank -> write back -> views (and, while idle, tidy)
    quality    the label check (k-fold error finding), on its own schedule, before another write-back
    insight    the strategy report, while idle
    pipeline   `dvc repro`'s stages over a versioned snapshot

Each stage takes what the one before produced (the snapshot version, the trained model, the
champion) rather than reading it again. Every stage is safe to repeat: the cursor lives in the
snapshot's registry commit, training is skipped for a snapshot that already has a registered model,
and write-back replaces its model version, so a rerun after a crash at any point finishes the job
without duplicating anything. Every stage after `version` reads the snapshot by its revision.
"""

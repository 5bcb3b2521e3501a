"""Data-side domain logic: dataset sources, decontamination, DPO pair corruption."""

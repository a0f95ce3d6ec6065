"""The only part of peftcalc that imports torch, transformers and peft."""

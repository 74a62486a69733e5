"""lm-eval glue for the halluc tasks: the functions live in halluc.evaluation (nbs/13_eval.ipynb)."""
import halluc.evaluation as _ev  # importing it also registers the `hf-backtrack` model with lm-eval

gsm8k_dataset = _ev.gsm8k_dataset
gsm8k_cot_dataset = _ev.gsm8k_cot_dataset
toy_dataset = _ev.toy_dataset
toy_target_dataset = _ev.toy_target_dataset
doc_to_text_zeroshot = _ev.doc_to_text_zeroshot
doc_to_text_cot = _ev.doc_to_text_cot
process_results = _ev.process_results
per_100_tokens = _ev.per_100_tokens
ratio = _ev.ratio

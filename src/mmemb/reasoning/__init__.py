"""Reasoning paths (MMEmb-R1): teachers write candidate rationales, counterfactual utilities select them.

format.py       the <think>/<answer> format, completions, teacher prompts
teachers.py     Teacher interface; LocalTeacher (nano / hf), FileTeacher (imports)
openai_teacher  an OpenAI-compatible chat-completions server (vLLM, SGLang)
candidates.py   generate K candidates per query into an append-only file that resumes after a kill
scoring.py      the utilities (with vs without, contrastive, swapped) and the embeddings they need
                (teacher-forced, cached)
select.py       `reason select`: score, choose by a rule (hard, soft, all; delta -> no-think), write
sensitivity.py  `reason inspect`: reasoning sensitivity, utilities, kept and rejected examples
diagnose.py     `reason diagnose`: what reasoning adds to a model on held-out pairs
config.py       the settings of every `reason` command, one typed tree
cli.py          `mmemb reason generate | select | inspect | diagnose`
"""

"""Reasoning paths (MMEmb-R1): teachers write candidate rationales, counterfactual utilities select them.

format.py       the <think>/<answer> format, completions, teacher prompts
teachers.py     Teacher interface; LocalTeacher (nano / hf), FileTeacher (imports)
openai_teacher  an OpenAI-compatible chat-completions server (vLLM, SGLang)
candidates.py   generate K candidates per query into an append-only file that resumes after a kill
scorers.py      utilities as plain functions over embeddings (with vs without, contrastive, swapped)
scoring.py      embed what the utilities need (teacher-forced, cached) and compute them
select.py       selection rules (hard, soft, all; delta -> no-think)
run.py, cli.py  `mmemb reason generate | select | inspect`
"""

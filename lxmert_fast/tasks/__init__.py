"""Fine-tuning tasks of LXMERT (VQA 2.0, GQA, NLVR2): the original's record formats, answer
tables, batches, metrics, prediction files and QA-head transfer."""

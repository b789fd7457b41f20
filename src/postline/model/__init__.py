"""Pure vocabulary shared by every stage: ids, mail, events, outcomes. No I/O."""

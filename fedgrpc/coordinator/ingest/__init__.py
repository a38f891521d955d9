"""One owner of an update's life: admit, check chunks, hash, hand on, commit.

`updates.UpdateIngest` runs the steps; `sinks` is where checked chunks go
(the round's running sum, or a mode's); `signatures` checks who signed what.
"""

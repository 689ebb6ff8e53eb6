"""Labeling functions for movie-review sentiment (IMDb classes `pos` / `neg`): an example of a
`label.functions` module. Each LF votes a class or abstains (None); textloop combines the votes
with Snorkel's LabelModel (label.combine). Written by hand, without looking at IMDb labels."""

from tasks.label.weak import keyword_lf, regex_lf

LFS = [
    keyword_lf("pos", ["excellent", "superb", "outstanding", "brilliant"], name="pos_excellent"),
    keyword_lf("pos", ["masterpiece", "masterful", "gem", "classic"], name="pos_masterpiece"),
    keyword_lf("pos", ["loved it", "love this movie", "loved this movie", "loved this film"],
               name="pos_loved"),
    keyword_lf("pos", ["highly recommend", "highly recommended", "must see", "must-see"],
               name="pos_recommend"),
    keyword_lf("pos", ["wonderful", "beautiful", "beautifully", "amazing", "fantastic"],
               name="pos_wonderful"),
    keyword_lf("pos", ["perfect", "perfectly", "flawless"], name="pos_perfect"),
    keyword_lf("pos", ["moving", "touching", "heartwarming", "powerful"], name="pos_moving"),
    regex_lf("pos", r"\b(10|9|8)\s*(/|out of)\s*10\b", name="pos_score"),
    keyword_lf("neg", ["worst", "awful", "horrible", "terrible"], name="neg_worst"),
    keyword_lf("neg", ["waste of time", "waste of money", "wasted"], name="neg_waste"),
    keyword_lf("neg", ["boring", "dull", "tedious", "unwatchable"], name="neg_boring"),
    keyword_lf("neg", ["stupid", "pointless", "ridiculous", "lame"], name="neg_stupid"),
    keyword_lf("neg", ["poorly", "badly", "poor acting", "bad acting"], name="neg_poorly"),
    keyword_lf("neg", ["avoid", "don't bother", "do not bother"], name="neg_avoid"),
    keyword_lf("neg", ["disappointing", "disappointed", "disappointment"], name="neg_disappointing"),
    regex_lf("neg", r"\b(1|2|3|4)\s*(/|out of)\s*10\b", name="neg_score"),
]

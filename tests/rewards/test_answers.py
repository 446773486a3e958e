"""Final-answer extraction (ibtpo.rewards.answers) and the math reward on a table of realistic completions.

The completions are of the kinds small instruct models write on GSM-style questions: boxed, "Answer:" lines,
"the answer is", and plain text whose last line states the result, plus traps that must not score.
"""

import pytest

from ibtpo.rewards.answers import find_final_answer
from ibtpo.rewards.functions import explain_math, math_accuracy

ALIGN = "\\begin{align}\n4 + 3 &= 7 \\\\\n\\end{align}"

# (gold, completion, expected extracted value, expected rule, expected score)
TABLE = [
    # --- correct, and scored 1 --------------------------------------------------------------------------------------
    ("7", "7", "7", "last_line", 1.0),
    ("7", "4 + 3 = 7", "7", "last_line", 1.0),
    ("7", ALIGN, "7", "last_line", 1.0),
    ("7", "\\begin{align} 4 + 3 &= 7", "7", "last_line", 1.0),
    ("70", "There are 30 boys and 40 girls.\nSo there are 70 students in total.", "70", "last_line", 1.0),
    ("342", "She saves $38 a week for 9 weeks.\n38 x 9 = 342\nShe will save $342.", "342", "last_line", 1.0),
    ("1687.5", "Total: 6 * 1125 * 0.25 = 1687.5\nHe makes $1,687.50 in a week.", "1687.50", "last_line", 1.0),
    ("1200", "The farm has 1,200 cows.", "1200", "last_line", 1.0),
    ("18", "Janet has 16 eggs. She eats 3 and bakes 4, so 9 are left.\n9 * 2 = 18\n\nThe answer is 18.",
     "18", "answer_marker", 1.0),
    ("18", "**Answer:** $18", "18", "answer_marker", 1.0),
    ("18", "Answer: 18 dollars", "18", "answer_marker", 1.0),
    ("18", "Final answer:\n18", "18", "answer_marker", 1.0),
    ("17", "So the answer is 12 + 5 = 17 apples.", "17", "answer_marker", 1.0),
    ("3/4", "The final answer is $\\frac{3}{4}$.", "\\frac{3}{4}", "answer_marker", 1.0),
    ("0.75", "The fraction eaten is 3/4", "3/4", "last_line", 1.0),
    ("-5", "The temperature drops to -5 degrees.", "-5", "last_line", 1.0),
    ("25", "The discount is 25%.", "25%", "last_line", 1.0),
    ("42", "6 times 7 is 42.\nI hope this helps!", "42", "last_line", 1.0),
    ("23", "( 69 / 3 ) = 23", "23", "last_line", 1.0),
    ("1010", "484 + 229 + 297 = 1010", "1010", "last_line", 1.0),
    ("72", "First \\boxed{70}. Wait, I forgot two: \\boxed{72}.", "72", "boxed", 1.0),
    ("10", "1. Add the apples: 4 + 6 = 10", "10", "last_line", 1.0),
    ("9", "Step 2: 12 - 3 = 9", "9", "last_line", 1.0),
    ("2", "x = 2", "2", "last_line", 1.0),
    # --- wrong answers, scored 0 ------------------------------------------------------------------------------------
    ("70", "There are 30 boys and 40 girls.\nSo there are 60 students in total.", "60", "last_line", 0.0),
    ("18", "The answer is 16.", "16", "answer_marker", 0.0),
    ("7", "4 + 3 = 8", "8", "last_line", 0.0),
    ("60", "She earns $60 in 2 hours.", "2", "last_line", 0.0),  # the LAST number of the final line
    # --- traps: no final answer, scored 0 although the gold number appears ----------------------------------------
    ("14", "3 + 4 = 7\n7 * 2 =", None, None, 0.0),  # cut by the length cap after an operator
    ("14", "Let me compute 7 * 2 step by step:", None, None, 0.0),  # a heading, not a result
    ("12", "What is 5 + 7?", None, None, 0.0),  # the question restated
    ("3", "Let me list the steps:\n3.", None, None, 0.0),  # a bare list number
    ("7", "The answer is \\boxed{7", None, None, 0.0),  # cut inside its box
    ("7", "", None, None, 0.0),
    ("7", "I am not sure how to solve this.", None, None, 0.0),
    ("5", "The answer is 5 is wrong, it is 6. Final answer: 6", "6", "answer_marker", 0.0),  # the last marker wins
    ("18", "18 is what I first thought.\nBut the total is 20.", "20", "last_line", 0.0),  # the last line wins
]


@pytest.mark.parametrize("gold, completion, value, rule, expected", TABLE)
def test_table_of_realistic_completions(gold, completion, value, rule, expected):
    found = find_final_answer(completion)
    assert (found.value if found else None, found.rule if found else None) == (value, rule)
    assert math_accuracy(["q"], [completion], None, answer=[gold]) == [expected]


def test_explain_math_reports_the_extracted_answer_rule_and_score():
    assert explain_math("So the total is 70.", "70") == {"extracted": "70", "rule": "last_line", "score": 1.0}
    assert explain_math("no idea", "70") == {"extracted": None, "rule": None, "score": 0.0}
    assert explain_math("\\boxed{3}", "")["score"] is None  # unparsable reference


def test_the_answer_marker_beats_a_later_last_line_and_the_box_beats_both():
    assert find_final_answer("Answer: 5\nThanks for asking, see you in 2 days.").value == "5"
    assert find_final_answer("\\boxed{4}\nAnswer: 5\n6").value == "4"

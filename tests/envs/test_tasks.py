import pytest

from agentrl.envs.tasks import Task, check_disjoint, index_tasks


def test_content_hash_normalises_whitespace_and_case():
    assert Task("a", "What is  2+2?").content_hash == Task("b", "what is 2+2?\n").content_hash
    assert Task("a", "2+2").content_hash != Task("a", "2+3").content_hash
    msgs = ({"role": "user", "content": "hi"},)
    assert Task("a", msgs).content_hash == Task("b", msgs).content_hash


def test_check_disjoint_catches_shared_ids_and_content():
    check_disjoint({"train": [Task("a", "x")], "test": [Task("b", "y")]})
    with pytest.raises(ValueError, match="id 'a'"):
        check_disjoint({"train": [Task("a", "x")], "test": [Task("a", "y")]})
    with pytest.raises(ValueError, match="same content"):
        check_disjoint({"train": [Task("a", "x")], "test": [Task("b", " X ")]})


def test_index_rejects_duplicates():
    with pytest.raises(ValueError, match="duplicate"):
        index_tasks([Task("a", "x"), Task("a", "y")])

"""The comparison methods that train S their own way: self-training and adversarial SSL."""

from cs231n.classifiers.fc_net import *  # noqa: F401,F403

import os

PRIMITIVES = ['none', 'skip_connect']
os.system('echo this file is never run')

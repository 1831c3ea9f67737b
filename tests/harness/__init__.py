"""The pyvirtrpc test harness: a real, throwaway libvirtd (``lab``) and OpenSSH sshd (``sshd``).

See ``tests/harness/README.md``.  Nothing here is imported by the library itself.
"""
